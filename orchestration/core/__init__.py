"""Base layer: plain records, configs, the model catalogue, contexts and run folders.

Nothing here imports `teacher`, `student` or `orchestration.driver`, and nothing here imports
torch at module level.
"""
