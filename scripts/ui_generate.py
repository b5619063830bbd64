"""Run inside the web UI's image by scripts/image_test.py (`podman exec -i ... python -`): one
image through the page's own client, against the API container; printed as base64 for the test
to decode and check."""

import base64

from genserve.clients.ui import Connection, GenServe

client = GenServe(Connection.from_env())
png = client.txt2img(prompt="a red circle on a blue background", seed=7)
print(base64.b64encode(png).decode())
