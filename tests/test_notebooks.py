"""The analysis notebooks run top to bottom in a fresh python3 kernel started in a scratch folder."""

import csv
import json
import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

from zoo.samples import sample_frames  # noqa: E402

NOTEBOOKS = Path(__file__).resolve().parents[1] / "analysis" / "notebooks"

# what each notebook writes to SPIKEZOO_OUT, and a text its displayed outputs must hold
WRITES = {
    "firing_rates": (["firing_layers.csv", "firing_groups.csv", "degradation.png", "degradation.svg"],
                     "sdme.embed_spike"),
    "energy_report": (["energy.csv", "energy.json"], "spike2former_ade20k.t1d4"),
    "mask_patterns": (["query_masks.npz", "query_masks_classes.csv", "query_masks_masks.png",
                       "query_masks_classes.png"], "most predicted class"),
}


def displayed_text(nb):
    texts = []
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            texts.append(output.get("text", ""))
            for mime in ("text/markdown", "text/plain"):
                texts.append(output.get("data", {}).get(mime, ""))
    return "\n".join(texts)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(WRITES))
def test_notebook_runs_from_any_folder(name, tmp_path):
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    assert not any(cell.get("outputs") or cell.get("execution_count")
                   for cell in nb.cells if cell.cell_type == "code"), "store the notebook with its outputs cleared"
    out = tmp_path / "out"
    client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=120,
                                     resources={"metadata": {"path": str(tmp_path)}})
    # the notebooks' defaults (no SPIKEZOO_* settings from the caller's shell); one OpenMP thread, because
    # on a busy 2-core machine threads waiting for each other make every forward far slower
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPIKEZOO_")}
    client.execute(env={**env, "OMP_NUM_THREADS": "1", "SPIKEZOO_OUT": str(out)})

    files, shown = WRITES[name]
    assert sorted(p.name for p in out.iterdir() if p.name in files) == sorted(files)
    assert shown in displayed_text(nb)
    assert "weights: shipped (pretrained=True)" in displayed_text(nb)  # the default model ships trained weights
    if name == "firing_rates":
        rows = list(csv.DictReader(open(out / "firing_layers.csv")))
        assert {r["name"] for r in rows} >= {"sdme.query_spike", "sdme.embed_spike"}
    if name == "energy_report":
        report = json.loads((out / "energy.json").read_text())
        # the notebooks' default data: CamVid in the checkout's data folder, else the bundled sample frames
        has_camvid = (NOTEBOOKS.parents[1] / "data" / "camvid").is_dir()
        assert report["images"] == (4 if has_camvid else len(sample_frames("camvid"))) and report["total_mj"] > 0
