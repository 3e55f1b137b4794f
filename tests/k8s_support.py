"""The courses the Kubernetes render is tested on, and how to render each one."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from orchestrator.cli.k8s import settings
from orchestrator.cli.main import build_parser
from orchestrator.config import Config, load_config, read_config_text
from orchestrator.k8s.render import Rendered, render

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "k8s"
GOLDEN = DATA / "golden"
CRD = DATA / "crd" / "monitoring.coreos.com_podmonitors-v0.93.0.yaml"
# Set to 1 to rewrite the golden directories from what the renderer gives now.
REGENERATE_ENV = "MIG_ORCH_REGENERATE_GOLDEN"


@dataclass(frozen=True)
class Course:
    name: str
    config: Path
    options: tuple[str, ...] = ()  # `k8s render` options on top of its [kubernetes] table

    def argv(self, out: Path, *more: str) -> list[str]:
        return ["k8s", "render", "-c", str(self.config), "-o", str(out), *self.options, *more]

    def load(self) -> Config:
        return load_config(self.config)

    def render(self) -> Rendered:
        args = build_parser().parse_args(self.argv(Path("unused")))
        cfg = self.load()
        return render(
            cfg, settings(cfg.kubernetes, args), str(self.config), read_config_text(self.config)
        )


COURSES = (
    # The course's own models.toml has no [kubernetes] table: the command line gives it.
    Course(
        "course",
        REPO / "models.toml",
        (
            "--image",
            "vllm/vllm-openai:v0.11.0",
            "--pool",
            "a100=A100-80GB:2",
            "--namespace",
            "llm-course",
        ),
    ),
    Course("department", DATA / "courses" / "department.toml"),
    Course("h200-lab", DATA / "courses" / "h200-lab.toml"),
)


def files_under(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): p.read_text(encoding="utf-8")
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }
