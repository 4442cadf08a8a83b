"""The errors of the task layer. Each names what was wrong, so the CLI can print
it as one readable line."""
from bws.spec import tasks as spec_tasks


class TemplateError(Exception):
    """Base of every error the task layer raises on bad input."""


class UnsupportedKerasFeature(TemplateError):
    """A Keras layer, argument, loss, optimizer or graph shape that has no
    canonical (bit-exact) equivalent in the engine. Never approximated."""


class KerasModelError(TemplateError):
    """A Keras model used wrongly (not built, not compiled, bad weights...)."""


class DatasetError(TemplateError):
    """A dataset that is unknown, not prepared, or not usable for the task."""


class TaskDefinitionError(TemplateError, spec_tasks.TaskDefinitionError):
    """A task definition file that is malformed; the message names the field.
    The spec's TaskDefinitionError, refined for the task layer: one error for a
    bad task definition, whichever layer found it."""
