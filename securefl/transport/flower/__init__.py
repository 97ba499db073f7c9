"""securefl on Flower's deployment engine (``pip install 'securefl[flower]'``).

The simulation's parties and protocols, with Flower messages between them:
:mod:`~securefl.transport.flower.parties` builds each party on its own machine,
:mod:`~securefl.transport.flower.link` carries the server's protocol stages to the
SuperNodes, :mod:`~securefl.transport.flower.node` runs a node's client,
:mod:`~securefl.transport.flower.serverapp` is the ServerApp's body and
:mod:`~securefl.transport.flower.local` starts a SuperLink and SuperNodes on one
machine. The Flower app itself is ``examples/flower_app``. Importing this package
imports nothing from Flower; its modules do.
"""
