"""How a run goes: pruning layer by layer or block by block, spreading the budget, the
loss-tolerance search, finetuning, resume, where the layer solves run, and the prune-retrain
workflows."""
