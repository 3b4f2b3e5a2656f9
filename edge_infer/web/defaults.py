"""The web server's default limits, importable without the [serve] extra (the CLI shows them
in `edge-infer serve --help`)."""

DEFAULT_BODY_TIMEOUT_S = 30.0  # a whole request body must arrive within this
DEFAULT_HEADER_TIMEOUT_S = 10.0  # a connection must send a request's headers within this
DEFAULT_KEEP_ALIVE_S = 5  # an idle keep-alive connection is closed after this
DEFAULT_MAX_CONNECTIONS = 100  # open connections at most
