"""Update protections built on TenSEAL (CKKS) and the cryptography package (secure aggregation)."""
