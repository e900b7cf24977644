"""Using a trained model: predict to CSV, export for other runtimes, serve over HTTP."""
