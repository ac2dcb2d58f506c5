"""The InstructGPT pipeline: the stage table, the scheduler, the report and its plots."""
