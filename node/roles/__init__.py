"""The role components a node can enable: client, miner, supervisor,
evaluator, verifier (and peer: the node core itself). docs/devnet.md."""
