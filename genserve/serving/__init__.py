"""BentoML's server side: the generators' runtime, batching, dispatch, middlewares, auth, jobs,
metrics and the OpenAI front door. service.py wires them."""
