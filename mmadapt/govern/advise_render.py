"""An Advice as the terminal shows it (``mmadapt advise``): the order, what is not advised, the compute
costs it weighed (``predicted (plan)`` beside ``measured (<report file>)``), the reasons and warnings."""

from __future__ import annotations

from mmadapt.govern.advise import Advice
from mmadapt.govern.report import table

COST_COLUMNS = ("for", "source", "setup", "peak GiB/device", "fits", "step s", "step order", "train s")


def render(advice: Advice) -> str:
    lines = [f"recommended: {advice.recommended or 'none'}"]
    if advice.alternatives:
        lines.append(f"then try:    {' -> '.join(advice.alternatives)}")
    for stack, rules in advice.excluded.items():
        lines.append(f"not advised: {stack} ({', '.join(rules)})")
    if advice.report:
        lines.append(f"measured:    {advice.report} (primary metric {advice.primary_metric})")
    if advice.plan:
        p = advice.plan
        lines.append(f"predicted:   {p['model']} ({p['params_b']:.2f} B parameters) on {p['gpus']} x {p['gpu_memory']} "
                     "(mmadapt plan: from its config, nothing run)")
    if advice.plan and advice.costs:  # the table comes with a prediction; measured rows alone read as before
        lines += ["", "compute costs", table(advice.costs, COST_COLUMNS)]
    lines += ["", "reasons", *(f"  {reason}" for reason in advice.reasons)]
    lines += [f"warning: {warning}" for warning in advice.warnings]
    return "\n".join(lines)
