"""A small labelled set of prompt pairs for the semantic cache.

``True``: the second prompt asks the same thing and may share the first's
answer. ``False``: a different question whose answer differs, however close
the words: negations, swapped roles, other entities, numbers, units, tenses.
Used by the tests (false-hit rate at the default threshold) and by
benchmarks/cache_bench.py.
"""

PAIRS: list[tuple[str, str, bool]] = [
    # paraphrases
    ("What is the capital of France?", "What's the capital city of France?", True),
    ("How do I reverse a list in Python?", "How can I reverse a Python list?", True),
    ("How many legs does a spider have?", "How many legs do spiders have?", True),
    ("What is the boiling point of water at sea level?", "At sea level, what temperature does water boil at?", True),
    ("Who wrote Pride and Prejudice?", "Who is the author of Pride and Prejudice?", True),
    ("How do I convert a string to an integer in JavaScript?", "How to convert a string into an integer in JavaScript?", True),
    ("What is the tallest mountain in the world?", "Which mountain is the tallest in the world?", True),
    ("How can I sort a dictionary by value in Python?", "How do I sort a Python dict by its values?", True),
    ("What does HTTP status code 404 mean?", "What is the meaning of the HTTP 404 status code?", True),
    ("How long should I boil an egg for a soft yolk?", "How long do I boil an egg to get a soft yolk?", True),
    ("Explain what a hash table is.", "Can you explain what a hash table is?", True),
    ("What is the speed of light in a vacuum?", "How fast does light travel in a vacuum?", True),
    ("How do I undo the last git commit?", "How can I undo my last commit in git?", True),
    ("What are the symptoms of dehydration?", "What symptoms does dehydration cause?", True),
    ("Translate 'good morning' into Spanish.", "How do you say 'good morning' in Spanish?", True),
    ("How do I center a div in CSS?", "How can I center a div using CSS?", True),
    ("What is the population of Tokyo?", "How many people live in Tokyo?", True),
    ("When did World War II end?", "In what year did the Second World War end?", True),
    ("what is the capital of france", "What is the capital of France?", True),
    ("How do I delete a file in Linux?", "How can I remove a file on Linux?", True),
    # negations
    ("What is the capital of France?", "What is not the capital of France?", False),
    ("Which foods are safe for dogs to eat?", "Which foods are not safe for dogs to eat?", False),
    ("Is it safe to drink tap water in Mexico?", "Why is it unsafe to drink tap water in Mexico?", False),
    ("What should I do when I can sleep well?", "What should I do when I cannot sleep?", False),
    ("List programming languages that are statically typed.", "List programming languages that are not statically typed.", False),
    ("Why does my code work?", "Why doesn't my code work?", False),
    # antonyms and swapped roles
    ("How do I increase the font size in Word?", "How do I decrease the font size in Word?", False),
    ("How do I convert Celsius to Fahrenheit?", "How do I convert Fahrenheit to Celsius?", False),
    ("What are the advantages of nuclear power?", "What are the disadvantages of nuclear power?", False),
    ("How do I encrypt a file with GPG?", "How do I decrypt a file with GPG?", False),
    ("How do I merge two branches in git?", "How do I split a branch into two in git?", False),
    ("Is a tomato a fruit?", "Is a tomato a vegetable?", False),
    # other entities, numbers, units
    ("What is the capital of France?", "What is the capital of Germany?", False),
    ("Who wrote Pride and Prejudice?", "Who wrote Sense and Sensibility?", False),
    ("What is 15% of 200?", "What is 25% of 200?", False),
    ("How many ounces are in a pound?", "How many ounces are in a cup?", False),
    ("How do I reverse a list in Python?", "How do I reverse a string in Python?", False),
    ("What is the population of Tokyo?", "What is the population of Osaka?", False),
    ("How do I install Python on Windows?", "How do I install Python on macOS?", False),
    ("When did World War I end?", "When did World War II end?", False),
    ("How long should I boil an egg for a soft yolk?", "How long should I boil an egg for a hard yolk?", False),
    # unrelated
    ("What is the capital of France?", "How do I bake sourdough bread?", False),
    ("Explain what a hash table is.", "Recommend a good science fiction novel.", False),
    ("How do I center a div in CSS?", "What are the symptoms of the flu?", False),
]
