"""Generation: ``plan`` (pure: class deficits -> plan), ``engine`` (batched DDIM + soft blend), ``writers`` (output
formats), ``prompts`` (shipped default lesion descriptions), ``stage`` (the ``balance`` function)."""
