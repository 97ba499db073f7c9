"""What more than one attack family needs: result writers (:mod:`.report`),
per-example gradients (:mod:`.grads`), rebuilding a library client or server
(:mod:`.federation`) and the ``securefl attack bench`` command (:mod:`.commands`)."""
