"""Per-ASIC processors: pure numpy computations, no MPI and no files.

Every processor works on the pixels of one ASIC block and is fed by the gather step in
train-chunks. Array conventions used throughout:

- a frame block is ``(frame, 64, 64)``: analog and digital values of one ASIC, pixel axes in the
  order of the input frame (XFEL: ``(slow_scan, fast_scan)``; lab: ``(row, col)``);
- each frame comes with its memory cell index (``cells``, int, -1 = invalid frame, to be
  ignored) and its train position (``trains``, int, position on the run's train axis, which is
  the scan step for drspc/drscs);
- results are dictionaries of arrays indexed ``(k, cell, 64, 64)`` where ``k`` is the gain
  stage (or threshold index).
"""
