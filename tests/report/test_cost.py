"""The report's cost table: Snakemake's per-job benchmark files summed per stage."""

import math

from unitscope.report.cost import cost_by_stage, read_benchmarks

HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"


def write(folder, relative, *rows):
    path = folder / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(HEADER + "".join(rows))


def test_jobs_are_summed_per_stage_most_expensive_first(tmp_path):
    write(
        tmp_path,
        "extract/mobilenet/faces.tsv",
        "15.08\t0:00:15\t861.60\t5504.29\t823.67\t841.96\t36.28\t13.83\t90.08\t14.03\n",
    )
    write(tmp_path, "extract/mobilenet/faces/features.18.tsv", "0.60\t0:00:00\t80.0\t300\t70\t75\t0\t0\t10\t0.41\n")
    write(tmp_path, "faces/selection.tsv", "4.00\t0:00:04\tNA\tNA\tNA\tNA\tNA\tNA\tNA\tNA\n")  # too short to sample
    write(
        tmp_path,
        "data/faces.tsv",
        "1.0\t0:00:01\t100\t1\t1\t1\t1\t1\t1\t0.9\n",
        "2.0\t0:00:02\t120\t1\t1\t1\t1\t1\t1\t1.8\n",
    )
    (tmp_path / "notes.tsv").write_text("")  # unreadable: skipped
    jobs = read_benchmarks(tmp_path)
    assert sorted(jobs["job"]) == [
        "data/faces",
        "extract/mobilenet/faces",
        "extract/mobilenet/faces/features.18",
        "faces/selection",
    ]
    rows = cost_by_stage(jobs)
    assert [row["stage"] for row in rows] == ["extract", "faces", "data", None]
    extract = rows[0]
    assert extract["jobs"] == 2 and math.isclose(extract["wall_s"], 15.68) and math.isclose(extract["cpu_s"], 14.44)
    assert extract["peak_rss_mb"] == 861.60 and extract["slowest"] == "extract/mobilenet/faces"
    assert math.isnan(rows[1]["cpu_s"]) and rows[2]["wall_s"] == 2.0  # a repeated benchmark: its last row
    total = rows[-1]
    assert total["jobs"] == 4 and math.isclose(total["wall_s"], 21.68) and total["peak_rss_mb"] == 861.60


def test_no_benchmarks_no_rows(tmp_path):
    assert cost_by_stage(read_benchmarks(tmp_path / "absent")) == []
