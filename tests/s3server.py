"""A real S3 API server on 127.0.0.1 for the shared tier's tests: moto's server mode in a process
of its own (as s3fs's own test suite runs it), so that a test can stop it mid-build. `S3Server`
starts it on a free port and waits for it to say which; `url(bucket)` and `options` are what
`Build(shared=...)` and s3fs need; `stop()` kills it (SIGKILL: an unreachable server, not a
polite one)."""
from __future__ import annotations

import os
import subprocess
import sys
import uuid
from typing import Any

_SERVE = """
import sys
from moto.server import ThreadedMotoServer
server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
print(server.get_host_and_port()[1], flush=True)
sys.stdin.read()      # until the test closes our stdin (or kills us)
"""

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
               "AWS_DEFAULT_REGION": "us-east-1"}


class S3Server:
    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", _SERVE], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env={**os.environ, **CREDENTIALS})
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if not line.strip().isdigit():
            self.proc.kill()
            raise RuntimeError(f"the S3 server did not start (it said {line!r})")
        self.port = int(line)
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.options: dict[str, Any] = {"endpoint_url": self.endpoint, "key": "testing", "secret": "testing"}
        self.env = {**CREDENTIALS, "AWS_ENDPOINT_URL": self.endpoint,
                    "FSSPEC_S3_ENDPOINT_URL": self.endpoint, "FSSPEC_S3_KEY": "testing", "FSSPEC_S3_SECRET": "testing"}

    def bucket(self) -> str:
        """A new empty bucket: a fresh shared tier for one test."""
        import s3fs
        name = f"nbbuild-{uuid.uuid4().hex[:12]}"
        fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": self.endpoint}, key="testing", secret="testing",
                               skip_instance_cache=True)
        fs.mkdir(name)
        return name

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
