from etlcore.management.pipeline_command import PipelineStepCommand


class Command(PipelineStepCommand):
    help = "Extract every dataset of a pipeline for one business date into staging."
    steps = ("extract",)
