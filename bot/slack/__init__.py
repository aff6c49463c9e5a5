"""The Slack side of FlyteGPT: the Bolt app, rendering, thread history, feedback."""
