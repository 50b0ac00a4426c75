"""The process runtime (Kedro-free): where the workers live, how they start, meet, log, stop and fail, on
which device, and what the run was made with. Shared by training (engine/) and inference (evaluation/)."""
