"""Base layer: plain records, configs, the model catalogue, contexts, run folders and the queue.

Nothing here imports `teacher`, `student` or `orchestration`, and nothing here imports torch at
module level.
"""
