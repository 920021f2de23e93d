"""Where a stage runs: device choice and thread settings, with errors that name the config key."""

import pytest
import torch

from unitscope.runtime import DeviceError, pick_device, use_threads


def test_device_errors_name_the_key():
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(DeviceError, match=r"config key extraction.device: 'banana' is not a device \(expected auto"):
        pick_device("banana")
    absent = torch.cuda.device_count()  # one past the last GPU, on any machine
    with pytest.raises(DeviceError, match=rf"config key faces.device: 'cuda:{absent}' was asked for, but torch sees"):
        pick_device(f"cuda:{absent}", key="faces.device")


def test_use_threads_gives_at_least_one():
    previous = torch.get_num_threads()
    try:
        use_threads(0)
        assert torch.get_num_threads() == 1
        use_threads(2)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(previous)


def test_loader_workers_come_out_of_the_jobs_threads():
    """A 2-thread job decodes in its own process (torch keeps both threads); an 8-thread job gets 2 workers and
    torch 6: never more processes busy than the job was given."""
    import torch

    from unitscope.runtime import loader_workers, use_threads

    before = torch.get_num_threads()
    try:
        use_threads(2)
        assert loader_workers(2) == 0 and torch.get_num_threads() == 2
        use_threads(8)
        assert loader_workers(4) == 2 and torch.get_num_threads() == 6
        use_threads(8)
        assert loader_workers(1) == 1 and torch.get_num_threads() == 7
    finally:
        torch.set_num_threads(before)


def test_every_study_stage_that_runs_a_network_refuses_an_absent_gpu_before_reading_anything(tmp_path):
    """The actmax and dissection stages take extraction.device as nefesi, the faces study and the atlas do: an absent
    GPU is the one-line error naming the key, raised before any input is read (the inputs here do not exist)."""
    from unitscope.studies.actmax.stages import run_optimize_layer, run_registry_target
    from unitscope.studies.dissection.stages import run_dissection, run_rotation

    absent = f"cuda:{torch.cuda.device_count()}"
    missing = str(tmp_path / "missing")
    calls = {
        "actmax optimise": lambda: run_optimize_layer(
            None, layer="conv1", checkpoint_path=missing, info_path=missing, units_path=missing, npz_path=missing,
            table_path=missing, images_dir=missing, device=absent,
        ),
        "actmax registry": lambda: run_registry_target(
            None, None, npz_path=missing, table_path=missing, images_dir=missing, device=absent
        ),
        "dissection": lambda: run_dissection(
            None, None, units_path=missing, layers_path=missing, tallies_path=missing, device=absent
        ),
        "rotation": lambda: run_rotation(None, None, out_path=missing, device=absent),
    }  # fmt: skip
    for stage, call in calls.items():
        with pytest.raises(DeviceError, match=rf"^config key extraction.device: '{absent}' was asked for") as error:
            call()
        assert "\n" not in str(error.value), stage
    assert not list(tmp_path.iterdir())


def test_parallel_map_keeps_order_gives_each_piece_one_thread_and_restores_torchs_threads():
    from unitscope.runtime import parallel_map

    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        seen = parallel_map(lambda item: (item, torch.get_num_threads()), list(range(6)), workers=2)
        assert seen == [(item, 1) for item in range(6)]  # in order, one intra-op thread per piece
        assert torch.get_num_threads() == 2  # restored
        assert parallel_map(lambda item: torch.get_num_threads(), [0, 1], workers=1) == [2, 2]  # a plain loop
        with pytest.raises(ZeroDivisionError):
            parallel_map(lambda item: 1 / item, [1, 0], workers=2)
        assert torch.get_num_threads() == 2  # restored after an error too
    finally:
        torch.set_num_threads(previous)
