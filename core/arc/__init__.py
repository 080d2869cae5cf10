"""Few-shot ARC, the pure part: grids, tasks, invertible augmentations, the teacher's edit schema and
test-time-training data and voting. Stdlib only (no torch); the student's model code lives in `student`."""
