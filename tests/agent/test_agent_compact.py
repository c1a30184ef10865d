"""The compact plan language without a model: what it can say, what it can never
say (a file outside the listing, a share outside the grant), how it expands,
and where a looping or babbling answer is stopped."""

from __future__ import annotations

import pytest

from appliance.agent import compact, compact_grammar, expansion
from appliance.agent.compact import CompactError, Names, parse, stop_here
from appliance.agent.expansion import expand
from appliance.agent.planner import listing_names

LISTING = {
    "docs": [
        "Inbox/",
        "Inbox/2021-03-invoice.pdf",
        "Inbox/2022-07-receipt.pdf",
        "Inbox/2022-07-receipt.png",
        "Inbox/scan.pdf",
        "Archive/",
        "Archive/2021/",
        "notes.txt",
    ],
    "family": ["Recipes/", "Recipes/soup.txt"],
}


@pytest.fixture
def names() -> Names:
    return listing_names(LISTING, 10_000)


def plan(names: Names, *steps: str) -> list[dict[str, object]]:
    words = ", ".join(step.split(" ", 1)[0] for step in steps)
    text = f"plan: test\nsteps: {words}\n" + "\n".join(steps) + "\n"
    return expand(parse(text, names), names).intents


def mv(src: str, to: str) -> dict[str, object]:
    return {"verb": "file.move", "resource": src, "params": {"to": to}}


def mkdir(path: str) -> dict[str, object]:
    return {"verb": "file.mkdir", "resource": path, "params": {}}


# ---------------------------------------------------------------- expansion
def test_a_sort_is_one_step_that_names_each_file_once(names: Names) -> None:
    intents = plan(names, "move docs:Inbox/*.pdf > docs:Archive/{year}/")
    assert intents == [
        # 2021 exists: no mkdir; 2022 does not: made before the move into it.
        mv("share:docs/Inbox/2021-03-invoice.pdf", "share:docs/Archive/2021/2021-03-invoice.pdf"),
        mkdir("share:docs/Archive/2022"),
        mv("share:docs/Inbox/2022-07-receipt.pdf", "share:docs/Archive/2022/2022-07-receipt.pdf"),
    ]
    # The .png is left where it is (only PDFs), scan.pdf has no year in its name.
    result = expand(
        parse("plan: x\nsteps: x\nmove docs:Inbox/*.pdf > docs:{year}/{month}/\n", names), names
    )
    assert [i["resource"] for i in result.intents if i["verb"] == "file.mkdir"] == [
        "share:docs/2021",
        "share:docs/2021/03",
        "share:docs/2022",
        "share:docs/2022/07",
    ]
    assert result.skipped == ["docs:Inbox/scan.pdf: no year or month in its name"]


def test_sort_is_a_move_of_a_pattern_into_a_template(names: Names) -> None:
    assert plan(names, "sort docs:Inbox/*.pdf > docs:Archive/{year}/") == plan(
        names, "move docs:Inbox/*.pdf > docs:Archive/{year}/"
    )
    assert plan(names, "sort docs:Inbox/*.pdf > docs:Archive/{year}") == plan(
        names, "sort docs:Inbox/*.pdf > docs:Archive/{year}/"
    )
    for bad in (
        "sort docs:Inbox/2021-03-invoice.pdf > docs:Archive/{year}/",  # one file: a move
        "sort docs:Inbox/*.pdf > docs:Archive/",  # no template: a move
        "sort docs:Inbox/*.pdf > docs:Nowhere/{year}/",
        "sort family:*.pdf > music:{year}/",
    ):
        with pytest.raises(CompactError):
            parse(f"plan: x\nsteps: x\n{bad}\n", names)


def test_shares_are_written_so_they_cannot_be_folders(names: Names) -> None:
    intents = plan(names, "copy docs:notes.txt > family:Recipes/")
    assert intents == [
        {
            "verb": "file.copy",
            "resource": "share:docs/notes.txt",
            "params": {"to": "share:family/Recipes/notes.txt"},
        }
    ]
    assert plan(names, "list family:") == [
        {"verb": "file.list", "resource": "share:family/", "params": {}}
    ]


def test_a_step_on_something_already_moved_is_left_out(names: Names) -> None:
    answer = parse(
        "plan: x\nsteps: x, x, x\nmove docs:notes.txt > docs:Archive/\n"
        "copy docs:notes.txt > docs:Inbox/\ndelete docs:notes.txt\n",
        names,
    )
    result = expand(answer, names)
    assert result.intents == [mv("share:docs/notes.txt", "share:docs/Archive/notes.txt")]
    assert len(result.skipped) == 2


def test_a_step_may_name_several_files(names: Names) -> None:
    assert plan(names, "move docs:notes.txt, docs:Inbox/scan.pdf > docs:Archive/") == [
        mv("share:docs/notes.txt", "share:docs/Archive/notes.txt"),
        mv("share:docs/Inbox/scan.pdf", "share:docs/Archive/scan.pdf"),
    ]
    assert [i["resource"] for i in plan(names, "delete docs:notes.txt, docs:Inbox/*.png")] == [
        "share:docs/notes.txt",
        "share:docs/Inbox/2022-07-receipt.png",
    ]
    with pytest.raises(CompactError):  # every one of them must be listed
        parse("plan: x\nsteps: move\nmove docs:notes.txt, docs:secret.txt > docs:Archive/\n", names)
    # A name holding ", " is read the one way the listing allows, or refused.
    odd = listing_names({"docs": ["a, b.txt", "a", "b.txt", "W/"]}, 10_000)
    assert plan(odd, "move docs:a, b.txt > docs:W/") == [
        mv("share:docs/a, b.txt", "share:docs/W/a, b.txt")
    ]
    odder = listing_names({"docs": ["a, docs:b.txt", "a", "b.txt", "W/"]}, 10_000)
    with pytest.raises(CompactError):
        parse("plan: x\nsteps: move\nmove docs:a, docs:b.txt > docs:W/\n", odder)


def test_every_verb(names: Names) -> None:
    got = plan(
        names,
        "stat docs:Inbox/",
        "read family:Recipes/soup.txt",
        "rename docs:notes.txt > todo.txt",
        'write docs:Inbox/new note.txt "milk, \\"eggs\\"\\nbread"',
        "mkdir docs:Archive/Old/",
        "delete docs:Inbox/*.png",
    )
    assert [(i["verb"], i["resource"], i["params"]) for i in got] == [
        ("file.stat", "share:docs/Inbox", {}),
        ("file.read", "share:family/Recipes/soup.txt", {}),
        ("file.rename", "share:docs/notes.txt", {"name": "todo.txt"}),
        ("file.write", "share:docs/Inbox/new note.txt", {"content": 'milk, "eggs"\nbread'}),
        ("file.mkdir", "share:docs/Archive/Old", {}),
        ("file.delete", "share:docs/Inbox/2022-07-receipt.png", {}),
    ]


def test_folders_without_their_slash_and_renames_written_as_paths(names: Names) -> None:
    assert plan(names, "list docs:Inbox") == plan(names, "list docs:Inbox/")
    assert plan(names, "move docs:notes.txt > docs:Archive") == [
        mv("share:docs/notes.txt", "share:docs/Archive/notes.txt")
    ]
    renamed = {"verb": "file.rename", "resource": "share:docs/Inbox", "params": {"name": "In"}}
    assert plan(names, "rename docs:Inbox/ > docs:In/") == [renamed]
    assert plan(names, "rename docs:Inbox > In") == [renamed]
    with pytest.raises(CompactError):  # a rename stays in its folder
        parse("plan: x\nsteps: x\nrename docs:notes.txt > family:notes.txt\n", names)


def test_questions_and_refusals(names: Names) -> None:
    ask = parse("ask: Which invoice do you mean?\n", names)
    assert (ask.kind, ask.say, ask.steps) == ("question", "Which invoice do you mean?", ())
    no = parse("no: I cannot send mail.", names)
    assert (no.kind, no.say) == ("refusal", "I cannot send mail.")
    with pytest.raises(CompactError):
        parse("ask:\n", names)  # a question says something


def test_model_text_shown_to_a_person_is_one_clean_line(names: Names) -> None:
    answer = parse("plan: Sort\u202e fdp.exe \x07 " + "x" * 400 + "\nsteps: x\nlist docs:\n", names)
    assert "\u202e" not in answer.say and "\x07" not in answer.say
    assert len(answer.say) == compact.SAY_MAX


# ---------------------------------------------------------------- what it can never say
@pytest.mark.parametrize(
    "step",
    [
        "delete docs:secret.txt",  # not listed
        "delete music:song.mp3",  # a share outside the grant
        "read docs:../../etc/passwd",
        "read /etc/passwd",
        "delete docs:",  # a share's top is not an entry
        "move docs:notes.txt > music:",
        "move docs:notes.txt > docs:Nowhere/Deeper/",  # a new folder only inside a listed one
        "move docs:notes.txt > docs:../x/",
        "move docs:notes.txt > docs:.hidden/",
        "move docs:notes.txt > docs:.appliance-tmp-1/",
        "move docs:Nowhere/*.pdf > docs:Archive/",  # a pattern over an unlisted folder
        "move docs:Inbox/*.pdf > docs:Nowhere/{year}/",  # a template over an unlisted folder
        "move docs:Inbox/*/../*.pdf > docs:Archive/",
        "copy docs:Inbox/ > docs:Archive/",  # copies copy files only
        "rename docs:notes.txt > ../../x",
        "rename docs:notes.txt > a/b",
        'write docs:Nowhere/x.txt "hi"',
        'write docs:../x.txt "hi"',
        "mkdir docs:a/b/",
        "mkdir family:..//",
        "format docs:",
        "move docs:notes.txt",
    ],
)
def test_nothing_outside_the_listing_parses(names: Names, step: str) -> None:
    with pytest.raises(CompactError):
        parse(f"plan: x\nsteps: x\n{step}\n", names)


def test_an_injected_file_name_is_only_a_name() -> None:
    # A name that holds the step separator and a share: the listing decides
    # how a step reads.
    names = listing_names(
        {"docs": ["a.pdf > family:", "a.pdf", "W/", "x.txt\u202e"], "family": []}, 10_000
    )
    assert plan(names, "move docs:a.pdf > family: > docs:W/") == [
        mv("share:docs/a.pdf > family:", "share:docs/W/a.pdf > family:")
    ]
    assert plan(names, "move docs:a.pdf > family:") == [
        mv("share:docs/a.pdf", "share:family/a.pdf")
    ]
    # A name the broker could not address anyway is never shown.
    assert all("\u202e" not in n for n in names.shown)
    # A step that reads two ways is refused, not guessed.
    two_ways = listing_names({"docs": ["x", "x > docs:y", "y > docs:z/", "z/"]}, 10_000)
    with pytest.raises(CompactError, match="more than one way"):
        parse("plan: x\nsteps: x\nmove docs:x > docs:y > docs:z/\n", two_ways)


def test_the_grammar_names_only_the_listing(names: Names) -> None:
    gbnf = compact_grammar.grammar(names)
    for name in ('"soup.txt"', '"Recipes"', '"family:"'):
        assert name in gbnf
    assert "music" not in gbnf and ".." not in gbnf
    # Quotes and non-ASCII names are written as GBNF literals.
    odd = compact_grammar.grammar(listing_names({"docs": ['say "hi".txt', "Über/"]}, 10_000))
    assert '"say \\"hi\\".txt"' in odd and '"Über"' in odd


# ---------------------------------------------------------------- loops and babble
def test_a_looping_plan_stops_at_its_first_repeated_step(names: Names) -> None:
    head = "plan: x\nsteps: " + ", ".join(["move"] * 12) + "\n"
    loop = head + "move docs:notes.txt > docs:Archive/\nlist docs:Inbox/\n" * 6
    assert stop_here(head + "list docs:Inbox/\nread docs:notes.txt\n") is False
    assert stop_here(head + "list docs:Inbox/\nread docs:notes.txt\nlist docs:Inbox/\n")
    answer = parse(loop, names)
    assert answer.stopped_at_repeat and len(answer.steps) == 2


def test_counts_and_babble_are_bounded(names: Names) -> None:
    with pytest.raises(CompactError, match="announces 2 steps but has 1"):
        parse("plan: x\nsteps: x, x\nlist docs:\n", names)  # cut off, no repeat: refused
    with pytest.raises(CompactError, match="one word per step"):
        parse("plan: x\nlist docs:\n", names)  # no length
    with pytest.raises(CompactError, match="1 to 12"):
        parse(
            "plan: x\nsteps: " + ", ".join(["list"] * 40) + "\nlist docs:\n",
            names,
        )
    babble = "plan: " + "and then " * 100
    assert stop_here(babble)
    with pytest.raises(CompactError, match="over"):
        parse(babble + "\nlist docs:\n", names)
    with pytest.raises(CompactError):
        parse("Sure! Here is your plan:\nlist docs:\n", names)  # no header at all
    # The count is decided first: lines after the announced steps are not read.
    answer = parse("plan: x\nsteps: x\nlist docs:\ndelete docs:notes.txt\nSee you!\n", names)
    assert [s.line for s in answer.steps] == ["list docs:"]


def test_a_pattern_that_matches_nothing_is_said(names: Names) -> None:
    result = expand(parse("plan: x\nsteps: x\ndelete docs:Archive/*.pdf\n", names), names)
    assert result.intents == [] and result.skipped == ["docs:Archive/*.pdf matches no listed file"]


def test_a_choice_between_two_same_names_the_request_does_not_make_is_asked() -> None:
    names = listing_names(
        {"docs": ["notes.txt", "Old/", "Old/a.txt", "a.txt"], "family": ["notes.txt"]}, 10_000
    )

    def choice(step: str, request: str) -> tuple[str, str] | None:
        return expansion.unsaid_choice(parse(f"plan: x\nsteps: x\n{step}\n", names), names, request)

    assert choice("read docs:notes.txt", "Read notes.txt") == ("docs:notes.txt", "family:notes.txt")
    # The request's words choose, or the model went against them: asked.
    assert choice("read family:notes.txt", "Read notes.txt on the family share") is None
    assert choice("read docs:notes.txt", "Read notes.txt on the family share") is not None
    # The plainer of two is what "a.txt" means, unless the other's place is said.
    assert choice("delete docs:a.txt", "delete a.txt") is None
    assert choice("delete docs:a.txt", "delete a.txt in Old") == ("docs:a.txt", "docs:Old/a.txt")
    assert choice("delete docs:Old/a.txt", "delete a.txt") == ("docs:Old/a.txt", "docs:a.txt")
    # Names the request does not use are the model's to choose.
    assert choice("read docs:notes.txt", "read my notes") is None


def test_a_same_named_entry_the_request_places_is_taken() -> None:
    names = listing_names(
        {"docs": ["notes.txt", "Old/", "Old/a.txt", "a.txt"], "family": ["notes.txt"]}, 10_000
    )

    def placed(step: str, request: str) -> tuple[str, ...]:
        answer = parse(f"plan: x\nsteps: x\n{step}\n", names)
        return expansion.placed(answer, names, request).steps[0].sources

    # The request says the other one's place and not the chosen one's: taken.
    assert placed("read docs:notes.txt", "Read notes.txt on the family share") == (
        "family:notes.txt",
    )
    assert placed("delete docs:a.txt", "delete a.txt in Old") == ("docs:Old/a.txt",)
    # Nothing said, or the chosen one's place said: as written.
    assert placed("read docs:notes.txt", "Read notes.txt") == ("docs:notes.txt",)
    assert placed("read docs:notes.txt", "Read notes.txt on docs, not family") == (
        "docs:notes.txt",
    )
    assert placed("delete docs:Old/a.txt", "delete a.txt in Old") == ("docs:Old/a.txt",)
    # The step is otherwise kept: its other sources, its target.
    step = "copy docs:notes.txt, docs:a.txt > docs:Old/"
    assert placed(step, "copy notes.txt from family and a.txt into Old") == (
        "family:notes.txt",
        "docs:a.txt",  # "Old" places the destination, not a.txt
    )


def test_a_file_the_request_never_speaks_of_among_others_like_it_is_asked() -> None:
    names = listing_names(
        {
            "photos": ["a.jpg", "b.jpg", "beach.jpg", "notes.txt"],
            "docs": ["shopping-list.txt", "packing-list.txt", "one.pdf"],
        },
        10_000,
    )

    def pick(request: str, *steps: str) -> list[str] | None:
        words = ", ".join(s.split(" ", 1)[0] for s in steps)
        answer = parse(f"plan: x\nsteps: {words}\n" + "\n".join(steps) + "\n", names)
        return expansion.unnamed_pick(answer, names, request)

    assert pick("Delete the photo.", "delete photos:a.jpg") == [
        "photos:a.jpg",
        "photos:b.jpg",
        "photos:beach.jpg",
    ]
    # Its name, a word of it (a typo allowed), or the only one of its kind.
    assert pick("Delete a.jpg", "delete photos:a.jpg") is None
    assert pick("bin the beach photo", "delete photos:beach.jpg") is None
    assert pick("what does my shoping list say", "read docs:shopping-list.txt") is None
    assert pick("read my notes", "read photos:notes.txt") is None
    assert pick("read the pdf", "read docs:one.pdf") is None
    # Every one of its kind in the plan: nothing left to choose from.
    assert pick("delete both photos", "delete photos:a.jpg, photos:b.jpg, photos:beach.jpg") is None
    # Several of a kind picked: a group was meant ("the photos"), not asked.
    assert pick("sort the photos", "delete photos:a.jpg", "delete photos:b.jpg") is None


def test_a_file_singled_out_only_by_words_another_has_too_is_asked() -> None:
    names = listing_names(
        {
            "docs": [
                "invoice-march.pdf",
                "invoice-april.pdf",
                "invoice-2019.pdf",
                "letter-school.pdf",
                "letter-bank.pdf",
                "rota.pdf",
                "rota-notes.txt",
            ]
        },
        10_000,
    )

    def pick(request: str, step: str) -> list[str] | None:
        answer = parse(f"plan: x\nsteps: {step.split()[0]}\n{step}\n", names)
        return expansion.unnamed_pick(answer, names, request)

    # "the invoice": every invoice has that word; the model's pick is asked about.
    asked = pick("Move the invoice to Paid.", "move docs:invoice-april.pdf > docs:Paid/")
    assert asked is not None and asked[0] == "docs:invoice-april.pdf"
    assert set(asked[1:]) == {"docs:invoice-march.pdf", "docs:invoice-2019.pdf"}
    # A word (or a number) only the chosen one has singles it out.
    assert (
        pick("move the april invoice to Paid", "move docs:invoice-april.pdf > docs:Paid/") is None
    )
    assert pick("bin the 2019 invoice", "delete docs:invoice-2019.pdf") is None
    assert pick("what does the school letter say", "read docs:letter-school.pdf") is None
    # The request's words point at another one than the model chose: asked.
    assert pick("read the letter from the bank", "read docs:letter-school.pdf") == [
        "docs:letter-school.pdf",
        "docs:letter-bank.pdf",
    ]
    # Another kind (extension) is not a rival: "the rota" is rota.pdf.
    assert pick("print the rota", "read docs:rota.pdf") is None


def test_a_destination_the_request_never_names_on_a_share_it_names_is_its_top() -> None:
    names = listing_names(
        {"docs": ["Photos/", "Photos/cat.jpg", "Scans/", "Scans/a.pdf"], "backup": ["Old/"]},
        10_000,
    )

    def to(request: str, step: str) -> list[str]:
        answer = expansion.placed(parse(f"plan: x\nsteps: x\n{step}\n", names), names, request)
        return [i["params"]["to"] for i in expand(answer, names).intents if "to" in i["params"]]

    step = "copy docs:Photos/cat.jpg > backup:Old/"
    assert to("back up the cat photo to the backup share", step) == ["share:backup/cat.jpg"]
    # The folder said, or the share not said: as written.
    assert to("copy the cat photo into Old on the backup share", step) == [
        "share:backup/Old/cat.jpg"
    ]
    assert to("keep a copy of the cat photo somewhere safe", step) == ["share:backup/Old/cat.jpg"]
    # A folder moved into a new folder of its own name: it goes there as itself.
    step = "move docs:Scans/ > backup:Scans/"
    assert to("move the Scans folder to the backup share", step) == ["share:backup/Scans"]
