"""Behaviour profiles per package version, and what changed between them (issue 15).

``model`` holds the pydantic models and the severity table, ``normalise`` strips what
differs between two clean builds, ``derive`` builds profiles from an observed build's
events, ``diff`` compares two profiles, ``store`` keeps them per tenant, ``judge``
puts the changes on a build record. docs/observer.md, "Behaviour profiles".
"""
