"""The data-movement engine: sources yield typed batches, sinks commit them with the cursor.

Free of Celery: the daemon's ``daemon.run_job`` task is a thin shell around :func:`engine.run_pipeline`.
"""
