"""The executor's side of the wire: it runs in the user's Python process."""
