"""voipqos: shape the line only while a VoIP call is active (OpenWrt add-on)."""

__version__ = "0.1.0"
