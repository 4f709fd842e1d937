"""What l0prune does to a torch model: choosing target layers, writing masks, snapshots and
rollback, the stack of blocks, streaming layer statistics."""
