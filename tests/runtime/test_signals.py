"""Stop signals: the first SIGTERM/SIGINT is a request, repeats are ignored, a second Ctrl-C stops at once."""

import os
import pickle
import signal

import pytest

from frcnn_pipeline.runtime.signals import StopSignals, TrainingStopped


def test_first_signal_is_a_request_repeats_are_ignored_and_handlers_come_back():
    before = signal.getsignal(signal.SIGTERM)
    with StopSignals() as stop:
        assert stop.requested is None
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested == "SIGTERM"
        os.kill(os.getpid(), signal.SIGTERM)  # SLURM and the launcher may both send it
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.requested == "SIGTERM"
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_worker_on_its_way_out_after_a_request_ignores_the_late_forwarded_sigterm():
    before = signal.getsignal(signal.SIGTERM)
    try:
        with StopSignals(on_the_way_out=True):
            pass  # no request: the handlers come back
        assert signal.getsignal(signal.SIGTERM) is before
        with StopSignals(on_the_way_out=True):
            os.kill(os.getpid(), signal.SIGTERM)
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
        os.kill(os.getpid(), signal.SIGTERM)  # the launcher's copy, after the loop: this process lives on
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler, "a Ctrl-C still stops it"
    finally:
        signal.signal(signal.SIGTERM, before)


def test_a_second_ctrl_c_stops_at_once():
    with StopSignals() as stop, pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.requested == "SIGINT"
        os.kill(os.getpid(), signal.SIGINT)


def test_training_stopped_says_where_to_resume_and_survives_pickling():
    error = TrainingStopped(57, 600, "ckpt/model_0000057.pth", "SIGTERM")
    assert "after iteration 57 of 600" in str(error) and "Rerun the same command" in str(error)
    assert str(pickle.loads(pickle.dumps(error))) == str(error)
