"""Deploy to Google Cloud: `python -m infra.deploy TARGET [--dry-run] [--build]`.

Three targets: the function source directory on Cloud Functions (2nd gen), the
function container on Cloud Run, and TensorFlow Serving (models baked in) on Cloud Run.
Configuration is environment variables only (README, "Deploy"); secrets travel by
Secret Manager reference, never by value.
"""
