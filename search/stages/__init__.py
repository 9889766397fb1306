"""What runs after a search, on its winners: confirmation over new seeds (`confirm`)."""
