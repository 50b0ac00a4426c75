"""Project hooks: a pipeline run alone on a fresh clone names the pipeline that writes its missing inputs."""

from test_cli import kedro_run


def test_pipeline_before_its_inputs_exist_names_the_pipeline_to_run(project):
    root, _ = project
    result = kedro_run(root, "--pipeline", "train")
    assert result.returncode == 1
    last = (result.stdout + result.stderr).rstrip().splitlines()[-2]
    assert last == (
        "Error: This pipeline's inputs do not exist yet. Run first: `kedro run --pipeline ingest` "
        "(writes categories, train_annotations, train_images); then `kedro run --pipeline weights` "
        "(writes initial_weights)."
    )
    assert not (root / "data" / "08_reporting").exists() or not any(
        (root / "data" / "08_reporting").iterdir()
    )
