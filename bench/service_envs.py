"""Image contents: the packages and installed size of each service's image environment, against
the whole project in one environment (what every image held when the project was one
distribution), built in the same run.

Each service's environment is built the way its image is (tests/image_env.py replays the image's
install steps); the baseline installs every distribution of the workspace, with the shared
library's cluster backends, into one environment.

    python bench/service_envs.py
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from image_env import UV, ImageEnv, build_image_env, workspace_overrides_file  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SERVICES = ("gateway", "extractor", "embedder", "summarizer", "notifier", "operator")


def whole_project(into: Path) -> ImageEnv:
    venv = into / "venv"
    subprocess.run([str(UV), "venv", "--quiet", "--python", sys.executable, str(venv)], check=True)
    # The embedder with its offline model, as its image has it; without PyTorch, as the workspace's
    # override-dependencies (which uv.lock and so every image resolves with) keep it out.
    members = [f"{REPO / 'shared'}[redis,s3]", *(str(p) + ("[minilm]" if p.name == "embedder" else "")
                                                  for p in sorted((REPO / "services").glob("*/")))]
    subprocess.run([str(UV), "pip", "install", "--quiet", "--python", str(venv / "bin" / "python"),
                    "--override", str(workspace_overrides_file(into)), *members], check=True)
    listed = subprocess.run([str(UV), "pip", "freeze", "--python", str(venv / "bin" / "python")],
                            capture_output=True, text=True, check=True).stdout.split()
    return ImageEnv(venv, [], {}, listed)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        baseline = whole_project(Path(tmp) / "all")
        base_size = baseline.size_bytes()
        print(f"{'environment':<28}{'packages':>10}{'MB':>10}{'size ratio':>12}")
        print(f"{'whole project (baseline)':<28}{len(baseline.distributions):>10}{base_size / 1e6:>10.1f}{1:>12.2f}")
        for name in SERVICES:
            env = build_image_env(name, Path(tmp) / name)
            size = env.size_bytes()
            print(f"{'conveyor-' + name:<28}{len(env.distributions):>10}{size / 1e6:>10.1f}{size / base_size:>12.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
