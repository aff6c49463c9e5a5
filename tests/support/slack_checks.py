"""What Slack accepts of a message the bot renders: one check for every test that renders.

Slack's limits (blocks per message, fallback text, section and button sizes) and slack_sdk's own
Block Kit models: a block must be exactly what `Block.parse(...).to_dict()` makes of it.
"""

from __future__ import annotations

from slack_sdk.models.blocks import Block

from flytegpt.bot.slack import blocks, render


def assert_round_trips(messages: list[blocks.SlackMessage]) -> None:
    """Every block is what slack_sdk's own Block Kit models make of it."""
    for m in messages:
        for b in m.blocks:
            assert Block.parse(b).to_dict() == b


def assert_slack_accepts(messages: list[blocks.SlackMessage]) -> None:
    """Within Slack's limits, with fallback text, every block round-tripping through slack_sdk."""
    assert messages
    for m in messages:
        assert m.text and len(m.text) <= blocks.MAX_TEXT_CHARS
        assert len(m.blocks) <= blocks.MAX_BLOCKS
        assert blocks.block_text_size(m.blocks) <= blocks.MESSAGE_BLOCKS_BUDGET  # Slack: msg_blocks_too_long
        for b in m.blocks:
            if b["type"] == "section":
                assert 0 < len(b["text"]["text"]) <= render.MAX_SECTION_CHARS
            for el in b.get("elements", []):
                assert len(el.get("value", "")) <= blocks.MAX_BUTTON_VALUE
                if isinstance(el.get("text"), str):
                    assert len(el["text"]) <= render.MAX_SECTION_CHARS
    assert_round_trips(messages)
