from etlcore.management.pipeline_command import PipelineStepCommand
from etlcore.services.pipeline import STEPS


class Command(PipelineStepCommand):
    help = "Run extract, transform and load in order for one pipeline and business date (the nightly job)."
    steps = STEPS
