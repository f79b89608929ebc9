"""MoEpic's Gradio app. Importing it switches off analytics and hub telemetry before gradio loads."""
import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
