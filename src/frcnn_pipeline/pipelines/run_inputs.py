"""The run's decisions that nodes take as inputs. Each is decided once per run by the run-configuration hook
(frcnn_pipeline.framework.hooks), which puts it in the catalog in memory (never stored): a node receives it
as it receives its `params:` sections, and the core takes it as an argument instead of deriving it again.
"""

# The `WorldConfig` (devices, workers, nodes, launcher): every node that spawns workers.
RUN_WORLD = "run_world"
# The training's `ResumeDecision` (the checkpoint it starts from, or afresh): the train node. The MLflow hook
# reads the same decision to continue the checkpoint's MLflow run.
RUN_RESUME = "run_resume"
