"""The BWS full node: store, mempool, validation, networking, roles, CLI and API."""
