"""The smallest proof that the fixtures work: a lab comes up and the client reaches the server."""


def test_client_gets_an_answer_from_the_server(start_lab):
    lab = start_lab("hello")
    result = lab.exec("client", ["python3", "-c",
                                 "import urllib.request;print(urllib.request.urlopen('http://server:8080/').read().decode())"])
    assert result.exit_code == 0, result.stderr
    assert result.text.strip() == "hello from the lab"
