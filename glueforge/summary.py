"""The end of a build that failed: one line per selected model, with its bundle or the step that stopped it.

doit reports each failed task where it fails, and a model whose weights could not be fetched fails
every step after: the screen ends in blocks of unmet dependencies. This reporter (doit's console
reporter, plus the summary) ends such a run with what a user wants to know:

    build summary for target cpu: 6 bundled, 1 failed
      aliked_lightglue   bundled: artifacts/store/aliked_lightglue/0.2.0/cpu
      superpoint_open    failed at fetch superpoint_open: weight 'superpoint_open': no source could be reached
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:
    from glueforge.tasks import Plan


def _first_line(fail: Any) -> str:
    """The failure's first line; where more follows (the sources a fetch tried), a pointer to it above."""
    text = fail.get_msg() if hasattr(fail, "get_msg") else str(fail)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return type(fail).__name__
    return lines[0].rstrip(":") + (" (the details are above)" if len(lines) > 1 else "")


def outcomes(plan: "Plan", failed: Mapping[str, Any]) -> dict[str, str]:
    """Each selected model's outcome: its bundle's path, or the first step (in stage order) that failed itself
    (not through a dependency) and that failure's first line. ``failed``: doit task name -> failure."""
    from doit.exceptions import UnmetDependency

    from glueforge.pipeline import STAGES

    own = {name: fail for name, fail in failed.items() if not isinstance(fail, UnmetDependency)}
    result = {}
    for model in plan.models:
        steps = [f"fetch:{w}" for w in sorted(set(plan.pipeline.weight_names(model).values()))]
        steps += [f"{stage}:{plan.target}:{model}" for stage in STAGES]
        stopped = next((step for step in steps if step in own), None)
        if stopped is not None:
            what = stopped.split(":")[0] + (f" {stopped.split(':')[1]}" if stopped.startswith("fetch:") else "")
            result[model] = f"failed at {what}: {_first_line(own[stopped])}"
        elif any(step in failed for step in steps):
            result[model] = "not built: a step it needs failed"
        else:
            path = plan.pipeline.store.bundle_path(model, plan.pipeline.version(model), plan.target)
            try:
                shown = path.relative_to(plan.pipeline.root)
            except ValueError:
                shown = path
            result[model] = f"bundled: {shown}"
    return result


def text(plan: "Plan", failed: Mapping[str, Any]) -> str:
    lines = outcomes(plan, failed)
    bundled = sum(line.startswith("bundled") for line in lines.values())
    width = max(map(len, lines), default=0)
    head = f"build summary for target {plan.target}: {bundled} bundled, {len(lines) - bundled} failed"
    return "\n".join([head, *(f"  {model:{width}s}  {line}" for model, line in lines.items())]) + "\n"


def reporter(plan: "Plan") -> type:
    """doit's console reporter that ends a `doit build` with a failure by :func:`text`, for ``DOIT_CONFIG["reporter"]``."""
    from doit.reporter import ConsoleReporter

    class BuildSummary(ConsoleReporter):
        desc = "console output, and a summary per model when a task failed"

        def __init__(self, outstream, options) -> None:
            super().__init__(outstream, options)
            self.failed: dict[str, Any] = {}
            self.building = False

        def initialize(self, tasks, selected_tasks) -> None:
            super().initialize(tasks, selected_tasks)
            self.building = "build" in (selected_tasks or ())  # not `doit fuse` or `doit publish`

        def add_failure(self, task, fail) -> None:
            super().add_failure(task, fail)
            self.failed[task.name] = fail

        def complete_run(self) -> None:
            super().complete_run()
            if self.building and self.failed and plan.models:
                self.write("\n" + text(plan, self.failed))

    return BuildSummary
