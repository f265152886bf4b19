"""Serving and scale-out inference on Ray (``pip install 'efficientmod[serve]'``).

* :mod:`~efficientmod.serve.artifact`: an artifact (model/ folder, training checkpoint,
  exported file) loaded for serving
* :mod:`~efficientmod.serve.http`: request bounds, reading and decoding images, JSON errors
* :mod:`~efficientmod.serve.app`: the Ray Serve deployment (dynamic batching) and its HTTP API
* :mod:`~efficientmod.serve.page`: the web page and the maps it draws
* :mod:`~efficientmod.serve.server`: ``efficientmod serve`` in the foreground, SIGTERM drains
* :mod:`~efficientmod.serve.batch`: batch inference over Ray Data (``predict --engine ray``)
* :mod:`~efficientmod.serve.cluster`: Ray started embedded (loopback) or joined

Importing this package imports neither Ray nor torch.
"""
