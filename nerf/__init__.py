"""Avatar models, rendering, training and metrics. Never imports ray or mlflow."""
