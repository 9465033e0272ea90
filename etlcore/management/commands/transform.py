from etlcore.management.pipeline_command import PipelineStepCommand


class Command(PipelineStepCommand):
    help = "Run the pipeline's Spark job (spark-submit) over one date's staged partitions."
    steps = ("transform",)
