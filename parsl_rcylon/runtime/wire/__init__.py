"""What both sides of the wire speak: the messages and the authenticated channel."""
