"""The reporting plugin: JUnit, summary, metrics files, and publishing to GitLab."""
