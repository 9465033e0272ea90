from etlcore.management.pipeline_command import PipelineStepCommand


class Command(PipelineStepCommand):
    help = "Load one date's transformed partition into the warehouse, atomically and idempotently."
    steps = ("load",)
