"""One module per `bws` command group; each exposes `register(parser)`."""
