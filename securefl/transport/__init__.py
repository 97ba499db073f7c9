"""Wire formats: what crosses between client and server, as bytes."""
