"""The sparsity sweep over a trained model's embedding tables, in the order it runs:

- :mod:`~lit_dlrm.sweep.grid`: the points (`GridPoint`, its CSV schema) and `make_grid`;
- :mod:`~lit_dlrm.sweep.context`: the contract between the driver and the callbacks
  (`SweepContext`, `SweepCallback`);
- :mod:`~lit_dlrm.sweep.driver`: `run_sweep`, one ``trainer.test`` per point still to do;
- :mod:`~lit_dlrm.sweep.results`: the CSV tables, rerun-safe;
- :mod:`~lit_dlrm.sweep.report`: the joined table, plots and TensorBoard runs.

The callbacks that prune and measure live in the top-level ``callbacks`` package.
"""
