"""lwd-rules: declarative layer-wise lr decay and weight-decay rules → optimizer parameter groups."""

from lwd_rules.errors import Location, PluginError, Problem, RuleError
from lwd_rules.hookspecs import hookimpl
from lwd_rules.identify import canonical_name
from lwd_rules.orchestrator import LwdRulesWarning, build_optimizer, build_optimizers, create_optimizer, create_optimizers, resolve
from lwd_rules.plan import ParamRow, Plan
from lwd_rules.rules.load import load_rules
from lwd_rules.rules.ruleset import RuleSet
from lwd_rules.training import LrScaleError, PlanMismatchError, check_optimizer

__version__ = "0.1.0"

__all__ = [
    "Location",
    "LrScaleError",
    "LwdRulesWarning",
    "ParamRow",
    "PlanMismatchError",
    "Plan",
    "PluginError",
    "Problem",
    "RuleError",
    "RuleSet",
    "__version__",
    "build_optimizer",
    "build_optimizers",
    "canonical_name",
    "check_optimizer",
    "create_optimizer",
    "create_optimizers",
    "hookimpl",
    "load_rules",
    "resolve",
]
