"""The miner the publishing tests act as: its Hub token (one the local Hub server accepts), hotkey and model repo."""

from tests.hub_server import TEST_TOKEN

TOKEN = TEST_TOKEN
HOTKEY = "5HotkeyOfThisMinerForTestsxxxxxxxxxxxxxxxxxxxxxx"
REPO = "miner/tiny-lora"
